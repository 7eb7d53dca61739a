import FerrySystem
@_exported import FerryTestSupport

#if canImport(Glibc)
    import Glibc
#endif
