from gridtsne.cli import main

main()
