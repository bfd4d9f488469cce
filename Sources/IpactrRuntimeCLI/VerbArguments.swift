import IpactrSystem

/// The command line of one `ipactr-runtime` verb, parsed as runc (urfave/cli)
/// reads it: `--name VALUE`, `--name=VALUE`, `-n VALUE`, flags without a value
/// (`--flag=false` too), `--` ends the options.
///
/// Written here rather than with swift-argument-parser: every container
/// start runs this binary three times (create, start, delete), and
/// argument-parser builds each command's option table by reflection, which
/// measured ~1.2 ms per run here, about a third of crun's whole `start`.
/// The interface is runc's, fixed and small, so a table does the job.
struct VerbOption {
    let long: String
    let short: Character?
    /// The value's name in the help text; nil for a flag.
    let value: String?
    let help: String
    var repeatable = false

    static func flag(_ long: String, _ short: Character? = nil, _ help: String) -> VerbOption {
        VerbOption(long: long, short: short, value: nil, help: help)
    }
    static func value(_ long: String, _ short: Character? = nil, _ value: String, _ help: String, repeatable: Bool = false) -> VerbOption {
        VerbOption(long: long, short: short, value: value, help: help, repeatable: repeatable)
    }
}

struct Verb {
    let name: String
    let summary: String
    let options: [VerbOption]
    /// Positional arguments as the usage line shows them (`ID`, `[SIGNAL]`).
    let arguments: [String]
    /// How many positional arguments must be given.
    let required: Int
    /// At most this many; nil: everything after the first `required` ones is
    /// taken verbatim, options included (`exec ID COMMAND…`).
    let maximum: Int?
    /// Returns the exit status.
    let run: (VerbArguments) throws -> Int32

    /// A verb of one container ID and no options.
    static func onID(_ name: String, _ summary: String, _ body: @escaping (String) throws -> Void) -> Verb {
        Verb(name: name, summary: summary, options: [], arguments: ["ID"], required: 1, maximum: 1) { a in
            try body(a.positionals[0])
            return 0
        }
    }

    var usage: String {
        (["ipactr-runtime", name] + (options.isEmpty ? [] : ["[OPTIONS]"]) + arguments).joined(separator: " ")
    }

    var help: String {
        var text = "USAGE: \(usage)\n\n\(summary)\n"
        if !options.isEmpty {
            text += "\nOPTIONS:\n"
            for o in options {
                let names = (o.short.map { "-\($0), " } ?? "    ") + "--" + o.long + (o.value.map { " " + $0 } ?? "")
                text += "  " + names.padding(28) + o.help + "\n"
            }
        }
        return text
    }
}

/// A verb's command line, parsed.
struct VerbArguments {
    private(set) var values: [String: [String]] = [:]
    private(set) var positionals: [String] = []

    func flag(_ long: String) -> Bool { values[long] != nil }
    func value(_ long: String) -> String? { values[long]?.last }
    func all(_ long: String) -> [String] { values[long] ?? [] }
    func int(_ long: String) throws(UsageError) -> Int {
        guard let v = value(long) else { return 0 }
        guard let n = Int(v), n >= 0 else { throw UsageError("--\(long) needs a non-negative number, not \(v)") }
        return n
    }

    init(_ args: [String], for verb: Verb) throws(UsageError) {
        var i = args.startIndex
        var optionsEnded = false
        while i < args.endIndex {
            let a = args[i]
            i += 1
            if verb.maximum == nil, positionals.count >= verb.required {
                // exec: the rest is the command, as given (a leading `--` dropped).
                let rest = args[(i - 1)...]
                positionals += rest.first == "--" ? Array(rest.dropFirst()) : Array(rest)
                break
            }
            if optionsEnded || a == "-" || !a.hasPrefix("-") { positionals.append(a); continue }
            if a == "--" { optionsEnded = true; continue }
            let body = a.hasPrefix("--") ? a.dropFirst(2) : a.dropFirst()
            let eq = body.firstIndex(of: "=")
            let name = String(eq.map { body[..<$0] } ?? body)
            let inline = eq.map { String(body[body.index(after: $0)...]) }
            if name == "help" || name == "h" { throw UsageError.help }
            // urfave/cli takes one or two dashes for every name.
            guard let option = verb.options.first(where: { $0.long == name || (name.count == 1 && $0.short == name.first) }) else {
                throw UsageError("unknown option \(a) for '\(verb.name)'")
            }
            if option.value == nil {
                switch inline {
                case nil, "true": values[option.long] = [""]
                case "false": values[option.long] = nil
                default: throw UsageError("--\(option.long) is a flag: it takes no value (\(a))")
                }
                continue
            }
            let v: String
            if let inline { v = inline } else {
                guard i < args.endIndex else { throw UsageError("option --\(option.long) needs a value") }
                v = args[i]
                i += 1
            }
            values[option.long] = option.repeatable ? (values[option.long] ?? []) + [v] : [v]
        }
        if positionals.count < verb.required {
            throw UsageError("'\(verb.name)' needs \(verb.arguments[positionals.count])")
        }
        if let max = verb.maximum, positionals.count > max {
            throw UsageError("'\(verb.name)' takes \(max == 0 ? "no arguments" : "at most \(max) argument\(max == 1 ? "" : "s")"), not \(positionals.joined(separator: " "))")
        }
    }
}

/// A command line that does not fit the verb: exit status 64 (EX_USAGE).
struct UsageError: Error {
    let message: String
    init(_ message: String) { self.message = message }
    static let help = UsageError("")
    var isHelp: Bool { message.isEmpty }
}

extension String {
    func padding(_ width: Int) -> String {
        count >= width ? self + " " : self + String(repeating: " ", count: width - count)
    }
}
