#!/usr/bin/env python3
"""Write the seeds of fuzz_sftp_server into tests/fuzz/corpus_sftp_server/.

Each seed is a stream of SFTP v3 requests as a client sends them, without the INIT that the
target puts in front. Paths name the tree the target builds (see fuzz_sftp_server.c). Handles are
predictable: the n-th handle opened on a fresh server is slot n-1, generation 1.

Run: python3 tests/fuzz/gen_corpus_sftp_server.py
"""
import os
import struct

OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT, SETSTAT, FSETSTAT, OPENDIR, READDIR = range(3, 13)
REMOVE, MKDIR, RMDIR, REALPATH, STAT, RENAME, READLINK, SYMLINK = range(13, 21)
EXTENDED = 200
FXF_READ, FXF_WRITE, FXF_APPEND, FXF_CREAT, FXF_TRUNC, FXF_EXCL = 1, 2, 4, 8, 16, 32
A_SIZE, A_UIDGID, A_PERM, A_TIME = 1, 2, 4, 8


def s(b):
    if isinstance(b, str):
        b = b.encode()
    return struct.pack(">I", len(b)) + b


def u32(v):
    return struct.pack(">I", v)


def u64(v):
    return struct.pack(">Q", v)


def attrs(flags=0, size=0, perm=0, atime=0, mtime=0):
    out = u32(flags)
    if flags & A_SIZE:
        out += u64(size)
    if flags & A_UIDGID:
        out += u32(1000) + u32(1000)
    if flags & A_PERM:
        out += u32(perm)
    if flags & A_TIME:
        out += u32(atime) + u32(mtime)
    return out


def handle(n):
    """the handle of the n-th open (from 0) on a fresh server"""
    return s(u32(n) + u32(1))


class Stream:
    def __init__(self):
        self.data = b""
        self.id = 0

    def req(self, type_, *fields):
        self.id += 1
        body = bytes([type_]) + u32(self.id) + b"".join(fields)
        self.data += u32(len(body)) + body
        return self


def seeds():
    yield "open_read", (Stream()
                        .req(OPEN, s("/rw/a"), u32(FXF_READ), attrs())
                        .req(READ, handle(0), u64(0), u32(100))
                        .req(READ, handle(0), u64(4), u32(3))
                        .req(READ, handle(0), u64(10), u32(100))
                        .req(READ, handle(0), u64(2**64 - 1), u32(2**32 - 1))
                        .req(FSTAT, handle(0))
                        .req(CLOSE, handle(0))
                        .req(READ, handle(0), u64(0), u32(1)))
    yield "readdir", (Stream()
                      .req(OPENDIR, s("/"))
                      .req(READDIR, handle(0))
                      .req(READDIR, handle(0))
                      .req(CLOSE, handle(0))
                      .req(OPENDIR, s("/rw"))
                      .req(READDIR, handle(1))
                      .req(READDIR, handle(1))
                      .req(FSTAT, handle(1))
                      .req(CLOSE, handle(1))
                      .req(OPENDIR, s("/ro/sub"))
                      .req(READDIR, handle(2)))
    yield "write", (Stream()
                    .req(OPEN, s("/rw/new"), u32(FXF_WRITE | FXF_CREAT | FXF_TRUNC),
                         attrs(A_PERM, perm=0o640))
                    .req(WRITE, handle(0), u64(0), s(b"bin\x00ary\x00\xff"))
                    .req(WRITE, handle(0), u64(100), s(b"tail"))
                    .req(FSETSTAT, handle(0), attrs(A_SIZE | A_PERM | A_TIME, 5, 0o600, 1, 2))
                    .req(EXTENDED, s("fsync@openssh.com"), handle(0))
                    .req(CLOSE, handle(0))
                    .req(OPEN, s("rw/new"), u32(FXF_READ | FXF_WRITE | FXF_APPEND), attrs())
                    .req(WRITE, handle(1), u64(0), s("more"))
                    .req(READ, handle(1), u64(0), u32(64))
                    .req(CLOSE, handle(1))
                    .req(RENAME, s("/rw/new"), s("/rw/d/new2"))
                    .req(EXTENDED, s("posix-rename@openssh.com"), s("/rw/d/new2"), s("/rw/a"))
                    .req(REMOVE, s("/rw/a")))
    yield "paths", (Stream()
                    .req(REALPATH, s("."))
                    .req(REALPATH, s("/rw/d/../l"))
                    .req(REALPATH, s("/rw/.."))
                    .req(STAT, s("/rw/l"))
                    .req(STAT, s("/rw/out"))
                    .req(LSTAT, s("/rw/out"))
                    .req(READLINK, s("/rw/abs"))
                    .req(STAT, s("/rw/abs/secret"))
                    .req(STAT, s("/rw/../outside/secret"))
                    .req(STAT, s("/nope"))
                    .req(OPEN, s("/rw/fifo"), u32(FXF_READ), attrs())
                    .req(OPEN, s("/rw/out"), u32(FXF_WRITE | FXF_CREAT), attrs())
                    .req(STAT, s(b"/rw/a\x00/x")))
    yield "readonly", (Stream()
                       .req(OPEN, s("/ro/f"), u32(FXF_WRITE), attrs())
                       .req(OPEN, s("/ro/f"), u32(FXF_READ), attrs())
                       .req(WRITE, handle(0), u64(0), s("x"))
                       .req(FSETSTAT, handle(0), attrs(A_PERM, perm=0o777))
                       .req(SETSTAT, s("/ro/f"), attrs(A_TIME, atime=1, mtime=1))
                       .req(MKDIR, s("/ro/x"), attrs())
                       .req(RMDIR, s("/ro/sub"))
                       .req(REMOVE, s("/ro/f"))
                       .req(RENAME, s("/ro/f"), s("/ro/g"))
                       .req(SYMLINK, s("f"), s("/ro/l"))
                       .req(EXTENDED, s("hardlink@openssh.com"), s("/ro/f"), s("/ro/h")))
    yield "extensions", (Stream()
                         .req(EXTENDED, s("limits@openssh.com"))
                         .req(EXTENDED, s("statvfs@openssh.com"), s("/"))
                         .req(EXTENDED, s("statvfs@openssh.com"), s("/ro"))
                         .req(OPEN, s("/rw/d/b"), u32(FXF_READ), attrs())
                         .req(EXTENDED, s("fstatvfs@openssh.com"), handle(0))
                         .req(EXTENDED, s("hardlink@openssh.com"), s("/rw/d/b"), s("/rw/hl"))
                         .req(EXTENDED, s("lsetstat@openssh.com"), s("/rw/l"),
                              attrs(A_TIME, atime=7, mtime=7))
                         .req(EXTENDED, s("copy-data"), handle(0))
                         .req(EXTENDED, s("posix-rename@openssh.com"), s("/rw/hl"), s("/ro/x")))
    yield "tree", (Stream()
                   .req(MKDIR, s("/rw/m"), attrs(A_PERM, perm=0o700))
                   .req(MKDIR, s("/rw/m/n"), attrs())
                   .req(SYMLINK, s("../a"), s("/rw/m/n/s"))
                   .req(READLINK, s("/rw/m/n/s"))
                   .req(SETSTAT, s("/rw/m"), attrs(A_PERM, perm=0o755))
                   .req(SETSTAT, s("/rw/l"), attrs(A_SIZE, size=0))
                   .req(SETSTAT, s("/rw/a"), attrs(A_UIDGID))
                   .req(REMOVE, s("/rw/m/n/s"))
                   .req(RMDIR, s("/rw/m/n"))
                   .req(RMDIR, s("/rw/m"))
                   .req(MKDIR, s("/new"), attrs())
                   .req(RMDIR, s("/rw")))
    yield "malformed", (Stream()
                        .req(READ, s(b"abc"), u64(0), u32(1))
                        .req(READ, s(b"\x00" * 100), u64(0), u32(1))
                        .req(CLOSE, s(b""))
                        .req(OPEN, u32(1000), b"/rw")
                        .req(SETSTAT, s("/rw/a"), u32(0x80000000), u32(10))
                        .req(99, s("x"))
                        .req(OPENDIR, s("/rw/d"))
                        .req(READ, handle(0), u64(0), u32(10))
                        .req(READDIR, handle(0))
                        .req(READDIR, u32(8) + u32(0) + u32(2)))


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus_sftp_server")
    os.makedirs(out, exist_ok=True)
    for name, stream in seeds():
        with open(os.path.join(out, name + ".bin"), "wb") as f:
            f.write(stream.data)


if __name__ == "__main__":
    main()
