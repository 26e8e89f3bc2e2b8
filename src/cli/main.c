/* main.c: rmapvm command dispatch (placeholder until the CLI lands). */
#include <stdio.h>
int main(void);
int main(void)
{
	return 0;
}
