import IpactrRuntimeCLI

RuntimeCommand.main(arguments: Array(CommandLine.arguments.dropFirst()))
