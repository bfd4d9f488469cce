import ArgumentParser
import Foundation
import IpactrImageStore
import IpactrSystem

/// `ipactr image inspect NAME`: an image's id, digest, layers and config as JSON.
struct ImageInspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "inspect", abstract: "Show an image as JSON.")

    @OptionGroup var store: StoreOptions
    @Argument(help: "Image name, or id (prefix).") var name: String

    func run() throws {
        try runVerb {
            let s = try store.openStore()
            let r = try s.image(name)
            let manifest = try s.manifest(of: r)
            let configJSON = try JSONSerialization.jsonObject(with: Data(readFile(s.path + "/blobs/sha256/" + r.id.hex)))
            let layers: [[String: Any]] = zip(manifest.layers, r.diffIDs).map { l, d in
                ["digest": l.digest.description, "diffID": d.description, "mediaType": l.mediaType, "size": l.size,
                 "path": s.layerPath(d)]
            }
            let out: [String: Any] = ["name": r.name, "id": r.id.description, "digest": r.digest.description,
                                      "size": r.size, "created": r.created ?? NSNull(), "layers": layers, "config": configJSON]
            let data = try JSONSerialization.data(withJSONObject: out, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
            say(String(decoding: data, as: UTF8.self))
        }
    }
}
