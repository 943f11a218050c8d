from services.wan.main import main

main()
