from face2scene_cli.cli import main

main()
