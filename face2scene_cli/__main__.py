from face2scene_cli.cli.app import main

main()
