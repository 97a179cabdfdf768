/* Version 2 of the plugin that reload.c loads. */
#include <stdio.h>

/*
 * Padding so that so2.so is clearly larger than so1.so, which lets the
 * tests exercise size-change detection. Non-zero contents keep it in
 * .rodata (occupying file space) rather than .bss; "used" keeps the
 * otherwise unreferenced array from being dropped by the optimiser.
 */
__attribute__((used))
static const char padding[8192] = { [0 ... 8191] = 'p' };

void action(void)
{
	puts("so2: version 2");
	fflush(stdout);
}
