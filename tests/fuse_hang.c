/* A FUSE file system of one file, /f.so, whose getattr blocks while a flag file exists. */
#define FUSE_USE_VERSION 31
#include <fuse.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

static const char *flag;
static char content[8192] = "\x7f" "ELF";

static int hang_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    (void)fi;
    memset(st, 0, sizeof *st);
    if (strcmp(path, "/") == 0) {
        st->st_mode = S_IFDIR | 0755;
        st->st_nlink = 2;
        return 0;
    }
    if (strcmp(path, "/f.so") != 0)
        return -ENOENT;
    while (access(flag, F_OK) == 0)
        usleep(100000);  /* the hung server: until the test ends (or kills us) */
    st->st_mode = S_IFREG | 0644;
    st->st_nlink = 1;
    st->st_size = sizeof content;
    return 0;
}

static int hang_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
                        struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
    (void)off; (void)fi; (void)flags;
    if (strcmp(path, "/") != 0)
        return -ENOENT;
    fill(buf, ".", NULL, 0, 0);
    fill(buf, "..", NULL, 0, 0);
    fill(buf, "f.so", NULL, 0, 0);
    return 0;
}

static int hang_open(const char *path, struct fuse_file_info *fi)
{
    (void)fi;
    return strcmp(path, "/f.so") == 0 ? 0 : -ENOENT;
}

static int hang_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi)
{
    (void)path; (void)fi;
    if (off >= (off_t)sizeof content)
        return 0;
    if (size > sizeof content - off)
        size = sizeof content - off;
    memcpy(buf, content + off, size);
    return size;
}

static const struct fuse_operations ops = {
    .getattr = hang_getattr, .readdir = hang_readdir, .open = hang_open, .read = hang_read,
};

int main(int argc, char *argv[])
{
    /* hang FLAG MOUNTPOINT [fuse options...] */
    flag = argv[1];
    argv[1] = argv[0];
    return fuse_main(argc - 1, argv + 1, &ops, NULL);
}
