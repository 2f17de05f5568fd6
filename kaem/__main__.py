from kaem.cli import main

main()
