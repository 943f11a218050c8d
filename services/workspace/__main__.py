from services.workspace.main import main

main()
