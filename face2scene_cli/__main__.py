from face2scene_cli.cli.entry import main

main()
