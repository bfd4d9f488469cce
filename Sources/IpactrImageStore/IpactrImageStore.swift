// IpactrImageStore
import IpactrSystem
