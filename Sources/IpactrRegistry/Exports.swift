// Credentials and auth files moved to IpactrRegistryAuth (the CLI reads them
// without linking the HTTP stack); users of the registry client get them here too.
@_exported import IpactrRegistryAuth
