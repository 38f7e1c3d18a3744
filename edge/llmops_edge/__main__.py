from llmops_edge.cli import main

main()
