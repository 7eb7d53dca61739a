import CCRIUImages
import FerrySystem

/// The memory of one restored process that is still missing: runs of its address
/// space, each with the address its pages have in the images (the two differ once the
/// process has moved a run with mremap). The bookkeeping of criu/uffd.c's lazy IOVs,
/// kept as a sorted array.
public struct LazyRuns: Equatable, Sendable {
    public struct Run: Equatable, Sendable {
        public var start: UInt64
        public var end: UInt64
        /// Where `start`'s page is in the images (what the source is asked for).
        public var imageStart: UInt64

        public init(start: UInt64, end: UInt64, imageStart: UInt64) {
            self.start = start
            self.end = end
            self.imageStart = imageStart
        }

        public var length: UInt64 { end - start }
        public var imageEnd: UInt64 { imageStart + length }
    }

    /// A part of a delivery to copy: `length` bytes at `destination`, from `offset` in
    /// the delivered bytes.
    public struct Piece: Equatable, Sendable {
        public var destination: UInt64
        public var offset: Int
        public var length: Int

        public init(destination: UInt64, offset: Int, length: Int) {
            self.destination = destination
            self.offset = offset
            self.length = length
        }
    }

    /// Sorted by `start`, not overlapping.
    public private(set) var runs: [Run]

    public init(runs: [Run] = []) {
        self.runs = runs.filter { $0.end > $0.start }.sorted { $0.start < $1.start }
    }

    /// The lazy runs of one process, split where a run crosses from one mapping into the
    /// next (one UFFDIO_COPY cannot span two mappings).
    public init(lazy: [CRIULazyRange], mappings: [Range<UInt64>]) {
        let sortedMappings = mappings.sorted { $0.lowerBound < $1.lowerBound }
        var result: [Run] = []
        for range in lazy {
            var start = range.address
            let end = range.address + range.pages * UInt64(CRIUImageSet.pageSize)
            for mapping in sortedMappings where mapping.upperBound > start && mapping.lowerBound < end {
                let from = max(start, mapping.lowerBound)
                let to = min(end, mapping.upperBound)
                result.append(Run(start: from, end: to, imageStart: from))
                start = to
            }
        }
        self.init(runs: result)
    }

    public var isEmpty: Bool { runs.isEmpty }

    public var bytes: UInt64 { runs.reduce(0) { $0 + $1.length } }

    /// The run holding `address`, if it is still missing.
    public func run(containing address: UInt64) -> Run? {
        guard let index = index(containing: address) else { return nil }
        return runs[index]
    }

    /// Takes out every missing part whose pages are image addresses [imageStart,
    /// imageStart + length): they are about to be copied. Returns where each part goes.
    public mutating func take(imageStart: UInt64, length: Int) -> [Piece] {
        let imageEnd = imageStart + UInt64(length)
        var pieces: [Piece] = []
        var kept: [Run] = []
        kept.reserveCapacity(runs.count + 1)
        for run in runs {
            let low = max(run.imageStart, imageStart)
            let high = min(run.imageEnd, imageEnd)
            guard low < high else {
                kept.append(run)
                continue
            }
            let destination = run.start + (low - run.imageStart)
            pieces.append(Piece(destination: destination, offset: Int(low - imageStart), length: Int(high - low)))
            if run.imageStart < low { kept.append(Run(start: run.start, end: destination, imageStart: run.imageStart)) }
            if high < run.imageEnd {
                let from = destination + (high - low)
                kept.append(Run(start: from, end: run.end, imageStart: high))
            }
        }
        runs = kept
        return pieces
    }

    /// Marks runs missing again (a copy that could not be done, a fork's share).
    public mutating func insert(_ added: [Run]) {
        guard !added.isEmpty else { return }
        self = LazyRuns(runs: runs + added)
    }

    /// Forgets [start, start + length): unmapped, or dropped by the process (it reads
    /// as zeros now, so the old pages must not be put back).
    public mutating func drop(start: UInt64, length: UInt64) {
        let end = start + length
        var kept: [Run] = []
        for run in runs {
            guard run.start < end, start < run.end else {
                kept.append(run)
                continue
            }
            if run.start < start { kept.append(Run(start: run.start, end: start, imageStart: run.imageStart)) }
            if end < run.end { kept.append(Run(start: end, end: run.end, imageStart: run.imageStart + (end - run.start))) }
        }
        runs = kept
    }

    /// mremap moved [from, from + length) to `to`: the missing parts in it move along,
    /// keeping their image addresses.
    public mutating func remap(from: UInt64, to: UInt64, length: UInt64) {
        let end = from + length
        var kept: [Run] = []
        for run in runs {
            guard run.start < end, from < run.end else {
                kept.append(run)
                continue
            }
            if run.start < from { kept.append(Run(start: run.start, end: from, imageStart: run.imageStart)) }
            let low = max(run.start, from)
            let high = min(run.end, end)
            kept.append(Run(start: low - from + to, end: high - from + to, imageStart: run.imageStart + (low - run.start)))
            if high < run.end { kept.append(Run(start: high, end: run.end, imageStart: run.imageStart + (high - run.start))) }
        }
        self = LazyRuns(runs: kept)
    }

    private func index(containing address: UInt64) -> Int? {
        var low = 0
        var high = runs.count
        while low < high {
            let mid = (low + high) / 2
            if runs[mid].start <= address { low = mid + 1 } else { high = mid }
        }
        let candidate = low - 1
        return candidate >= 0 && address < runs[candidate].end ? candidate : nil
    }
}

extension CRIUImageSet {
    /// The memory a lazy restore leaves missing, per process id in the images: the lazy
    /// runs of its pagemap, split at its mappings (mm-<id>.img).
    public static func lazyRuns(directory: String) throws -> [UInt64: LazyRuns] {
        var byID: [UInt64: [CRIULazyRange]] = [:]
        for range in try lazyRanges(directory: directory) { byID[range.id, default: []].append(range) }
        var result: [UInt64: LazyRuns] = [:]
        for (id, ranges) in byID {
            let name = "mm-\(id).img"
            let image = try CRIUImageFile(name: name, bytes: try Files.read("\(directory)/\(name)"))
            let mappings = try image.decode(entry: 0, as: "mm_entry", mm_entry__unpack, mm_entry__free_unpacked) { mm in
                (0..<mm.n_vmas).compactMap { index -> Range<UInt64>? in
                    guard let vma = mm.vmas[index], vma.pointee.end > vma.pointee.start else { return nil }
                    return vma.pointee.start..<vma.pointee.end
                }
            }
            result[id] = LazyRuns(lazy: ranges, mappings: mappings)
        }
        return result
    }
}
