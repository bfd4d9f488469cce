import IpactrCLI

await IpactrCommand.main(arguments: Array(CommandLine.arguments.dropFirst()))
