from raybridge.cli import main

raise SystemExit(main())
