"""The demo: seem_node on a real street video, prompted by text and a click: `python -m demo.run --help`
(scripts/demo.sh sets up the environment first). It uses the repository checkout (launch files, config,
the test media script), so it lives beside the package, not in it."""
