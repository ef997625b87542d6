/*  =========================================================================
    table — columns of text for people, each as wide as its widest cell

    The listing commands (kiln runners, kiln workers) build a table cell
    by cell and print it once every width is known:

        kiln_table_t *table = kiln_table_new (3);
        kiln_table_add (table, "ID");  kiln_table_add (table, "APP"); ...
        kiln_table_addf (table, "%d", count);
        kiln_table_print (table, stdout);
        kiln_table_destroy (&table);

    Cells fill rows left to right; a row ends after `columns` cells.
    =========================================================================
*/
#ifndef KILN_CLI_TABLE_H_INCLUDED
#define KILN_CLI_TABLE_H_INCLUDED

#include <stddef.h>
#include <stdio.h>

typedef struct _kiln_table_t kiln_table_t;

//  A table of `columns` columns (at least 1). NULL on failure.
kiln_table_t *kiln_table_new (size_t columns);

void kiln_table_destroy (kiln_table_t **self_p);

//  Appends a cell (copied; NULL or "" prints as "-"). -1 when out of memory.
int kiln_table_add (kiln_table_t *self, const char *text);

//  Appends a formatted cell. -1 when out of memory.
int kiln_table_addf (kiln_table_t *self, const char *format, ...)
    __attribute__ ((format (printf, 2, 3)));

//  Prints every row, columns two spaces apart, no trailing spaces. A last
//  row that is not full is padded with "-".
void kiln_table_print (kiln_table_t *self, FILE *out);

#endif
