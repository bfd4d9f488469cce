import IpactrWorkers

await IpactrWorkerCommand.main(arguments: Array(CommandLine.arguments.dropFirst()))
