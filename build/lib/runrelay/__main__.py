from runrelay.cli import main

main()
