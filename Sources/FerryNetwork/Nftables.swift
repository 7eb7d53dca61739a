import CNftables

/// libnftables: runs nft commands (nft's own syntax) as one transaction, all or nothing.
public enum Nftables {
    /// Runs `commands`; throws with libnftables' error output.
    public static func run(_ commands: String) throws(NetworkError) {
        guard let context = nft_ctx_new(UInt32(NFT_CTX_DEFAULT)) else {
            throw NetworkError(.nftables, "cannot start libnftables")
        }
        defer { nft_ctx_free(context) }
        _ = nft_ctx_buffer_output(context)
        _ = nft_ctx_buffer_error(context)
        let rc = nft_run_cmd_from_buffer(context, commands)
        if rc != 0 {
            let message = nft_ctx_get_error_buffer(context).map { String(cString: $0) } ?? ""
            let line = message.split(separator: "\n").first.map(String.init) ?? "error \(rc)"
            throw NetworkError(.nftables, "nftables refused Ferry's rules: \(line)")
        }
    }

    /// Runs `commands` and returns what nft printed (`list ...`).
    public static func output(_ commands: String) throws(NetworkError) -> String {
        guard let context = nft_ctx_new(UInt32(NFT_CTX_DEFAULT)) else {
            throw NetworkError(.nftables, "cannot start libnftables")
        }
        defer { nft_ctx_free(context) }
        _ = nft_ctx_buffer_output(context)
        _ = nft_ctx_buffer_error(context)
        let rc = nft_run_cmd_from_buffer(context, commands)
        let output = nft_ctx_get_output_buffer(context).map { String(cString: $0) } ?? ""
        if rc != 0 {
            let message = nft_ctx_get_error_buffer(context).map { String(cString: $0) } ?? ""
            throw NetworkError(.nftables, "nft: \(message.split(separator: "\n").first.map(String.init) ?? "error \(rc)")")
        }
        return output
    }
}
