from galda.run import main

main()
