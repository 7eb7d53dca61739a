import FerryCLI

FerryMain.main()
