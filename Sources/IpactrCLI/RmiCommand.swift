import ArgumentParser
import IpactrImageStore
import IpactrMachine

/// `ipactr rmi NAME…`: removes names; layers no other image uses go with them.
struct RmiCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rmi", abstract: "Remove images.")

    @OptionGroup var store: StoreOptions
    @Argument(help: "Image names (or ids).") var names: [String]

    func validate() throws {
        if names.isEmpty { throw ValidationError("give at least one image NAME") }
    }

    func run() throws {
        try runVerb {
            let s = try store.openStore()
            let machines = MachineManager(root: store.stateRoot)
            for n in names {
                // Unknown names are left to `remove`, which reports them (after
                // the store's writer lock has cleaned what killed writers left).
                if let image = try? s.image(n) { try machines.checkImageUnused(image.name) }
                let r = try s.remove(n)
                say("removed \(r.name) (\(r.shortID))")
            }
        }
    }
}
