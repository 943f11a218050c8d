from services.enhancer.main import main

main()
