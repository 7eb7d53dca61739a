import CFerryLinux
import CSeccomp
import FerrySystem
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// The one user of libseccomp: turns a spec's `linux.seccomp` into the BPF program the
/// spawn shim installs right before exec.
///
/// Why here and not in the child: libseccomp allocates, and the child of the
/// multithreaded supervisor may only make async-signal-safe calls. So the program is
/// compiled in the parent and the child only hands the bytes to seccomp(2).
public enum SeccompFilter {
    /// This machine's architecture as a profile spells it ("SCMP_ARCH_X86_64").
    public static var nativeArchitecture: String {
        let token = seccomp_arch_native()
        let names = ["x86_64", "x86", "x32", "aarch64", "arm", "ppc64le", "ppc64", "s390x", "riscv64", "mips64"]
        let name = names.first { seccomp_arch_resolve_name($0) == token } ?? "x86_64"
        return "SCMP_ARCH_\(name.uppercased())"
    }

    /// Every system call libseccomp knows for this machine's architecture.
    public static func knownSyscalls() -> [String] {
        var names: [String] = []
        let native = seccomp_arch_native()
        // Linux's native numbers stay below 1024 on every architecture Ferry runs on.
        for number in Int32(0)..<1024 {
            guard let name = seccomp_syscall_resolve_num_arch(native, number) else { continue }
            names.append(String(cString: name))
            free(name)
        }
        return names
    }

    /// The BPF program (an array of `struct sock_filter`) for `profile`. Rules naming a
    /// system call this machine lacks are skipped, as runc does; rules whose action is
    /// the default are redundant and skipped too (libseccomp refuses them).
    public static func compile(_ profile: OCISpec.Seccomp) throws(RuntimeError) -> [UInt8] {
        let defaultAction = try action(profile.defaultAction, errno: profile.defaultErrnoRet)
        guard let context = seccomp_init(defaultAction) else {
            throw RuntimeError(.invalidArgument, "seccomp: cannot create a filter (out of memory)")
        }
        defer { seccomp_release(context) }
        let native = seccomp_arch_native()
        for architecture in profile.architectures ?? [] {
            let name = architecture.hasPrefix("SCMP_ARCH_") ? String(architecture.dropFirst(10)).lowercased() : architecture.lowercased()
            let token = seccomp_arch_resolve_name(name)
            // An architecture this libseccomp does not know cannot run here anyway.
            guard token != 0, token != native else { continue }
            let rc = seccomp_arch_add(context, token)
            if rc != 0, rc != -EEXIST {
                throw RuntimeError(.invalidArgument, "seccomp: cannot add architecture \(architecture): \(Errno(rawValue: -rc))")
            }
        }
        for rule in profile.syscalls ?? [] {
            let ruleAction = try action(rule.action, errno: rule.errnoRet)
            if ruleAction == defaultAction { continue }
            var comparisons: [scmp_arg_cmp] = []
            for argument in rule.args ?? [] {
                guard argument.index < 6 else {
                    throw RuntimeError(.invalidArgument, "seccomp: argument index \(argument.index) of \(rule.names) is beyond the 6 a system call has")
                }
                let op = try comparison(argument.op)
                comparisons.append(scmp_arg_cmp(arg: argument.index, op: op, datum_a: argument.value, datum_b: argument.valueTwo ?? 0))
            }
            for name in rule.names {
                let number = seccomp_syscall_resolve_name(name)
                if number == __NR_SCMP_ERROR { continue }
                let rc = comparisons.withUnsafeBufferPointer { buffer in
                    seccomp_rule_add_array(context, ruleAction, number, UInt32(buffer.count), buffer.baseAddress)
                }
                if rc != 0 {
                    throw RuntimeError(.invalidArgument, "seccomp: cannot add the rule for \(name) (\(rule.action)): \(Errno(rawValue: -rc))")
                }
            }
        }
        let memory = ferry_memfd("ferry-seccomp")
        guard memory >= 0 else {
            throw RuntimeError(.invalidArgument, "seccomp: cannot create a buffer for the filter: \(Errno(rawValue: errno))")
        }
        let fd = OwnedFD(adopting: memory)
        let rc = seccomp_export_bpf(context, fd.raw)
        if rc != 0 { throw RuntimeError(.invalidArgument, "seccomp: cannot build the filter: \(Errno(rawValue: -rc))") }
        guard lseek(fd.raw, 0, SEEK_SET) == 0, let program = try? fd.readAll(), !program.isEmpty, program.count % 8 == 0 else {
            throw RuntimeError(.invalidArgument, "seccomp: cannot read the built filter back")
        }
        return program
    }

    /// SCMP_ACT_* by name, with its errno where it takes one (EPERM unless given, as the
    /// OCI spec says).
    static func action(_ name: String, errno value: UInt32?) throws(RuntimeError) -> UInt32 {
        let data = (value ?? 1) & 0xffff
        switch name {
        case "SCMP_ACT_ALLOW": return 0x7fff_0000
        case "SCMP_ACT_ERRNO": return 0x0005_0000 | data
        case "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD": return 0x0000_0000
        case "SCMP_ACT_KILL_PROCESS": return 0x8000_0000
        case "SCMP_ACT_TRAP": return 0x0003_0000
        case "SCMP_ACT_TRACE": return 0x7ff0_0000 | data
        case "SCMP_ACT_LOG": return 0x7ffc_0000
        default:
            throw RuntimeError(.invalidArgument, "seccomp: unsupported action '\(name)'")
        }
    }

    static func comparison(_ name: String) throws(RuntimeError) -> scmp_compare {
        let ops = ["SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7]
        guard let raw = ops[name] else { throw RuntimeError(.invalidArgument, "seccomp: unknown comparison '\(name)'") }
        return scmp_compare(rawValue: UInt32(raw))
    }
}
