from services.sdxl.main import main

main()
