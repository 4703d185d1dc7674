/*
 * /init of initramfs-pause.cpio: spins on `pause` for ever and never makes a system call,
 * so a guest kernel without the system-call patches keeps running it on a PVM host.
 * Built by build.sh with -nostdlib: _start is the entry point, there is no libc.
 */
void _start(void)
{
	for (;;)
		__asm__ volatile("pause");
}
