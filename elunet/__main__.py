from elunet.cli import main

main()
