import ArgumentParser

/// `ipactr image …`: verbs on one image or the whole store.
struct ImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image", abstract: "Inspect images and prune the store.",
        subcommands: [ImageInspectCommand.self, ImagePruneCommand.self])
}
