/* Version 1 of the plugin that reload.c loads. */
#include <stdio.h>

void action(void)
{
	puts("so1: version 1");
	/* Flush here too: the watcher's tests read stdout through a pipe. */
	fflush(stdout);
}
