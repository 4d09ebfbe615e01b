from inferstack.cli import main

main()
