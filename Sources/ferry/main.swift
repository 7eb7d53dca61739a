import FerryCLI
FerryMain.main()
