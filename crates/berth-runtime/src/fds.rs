//! File descriptor hygiene before exec (CVE-2024-21626): nothing but stdio and the
//! preserved fds may reach the container process.

/// Marks every fd >= `first` close-on-exec. Our own sync fds stay usable until execve.
pub fn cloexec_from(first: u32) -> Result<(), nix::Error> {
    // SAFETY: close_range takes plain integers and touches only our fd table.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    // Kernels before 5.11: walk /proc/self/fd.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first as i32)
        .collect();
    for fd in fds {
        // SAFETY: setting a flag on an fd number; a closed one just fails with EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Clears close-on-exec on the preserved fds 3..3+n (the caller passed them on purpose).
pub fn keep_preserved(n: u32) {
    for fd in 3..3 + n as i32 {
        // SAFETY: as above.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    }
}
