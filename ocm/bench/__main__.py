from ocm.bench import main

main()
