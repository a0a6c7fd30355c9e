from lightmoe_cli.cli import main

main()
