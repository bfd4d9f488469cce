// IpactrRuntime
import IpactrSystem
