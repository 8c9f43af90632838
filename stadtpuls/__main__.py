from stadtpuls.cli import main

main()
