"""`python -m codegen`: see codegen.generate."""

from codegen.generate import main

raise SystemExit(main())
