from proxydhcp.cli import main

raise SystemExit(main())
