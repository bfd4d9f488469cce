import IpactrPullWorker

await PullWorker.main(arguments: Array(CommandLine.arguments.dropFirst()))
