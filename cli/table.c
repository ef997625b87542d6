/*  =========================================================================
    table — columns of text for people, each as wide as its widest cell

    Widths count bytes, except that UTF-8 continuation bytes do not widen
    a cell (names and errors may hold non-ASCII text).
    =========================================================================
*/
#include "table.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

struct _kiln_table_t {
    size_t columns;
    char **cells;
    size_t count;
    size_t capacity;
};

kiln_table_t *
kiln_table_new (size_t columns)
{
    if (columns == 0)
        return NULL;
    kiln_table_t *self = calloc (1, sizeof *self);
    if (self)
        self->columns = columns;
    return self;
}

void
kiln_table_destroy (kiln_table_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    kiln_table_t *self = *self_p;
    for (size_t i = 0; i < self->count; i++)
        free (self->cells [i]);
    free (self->cells);
    free (self);
    *self_p = NULL;
}

//  Takes ownership of text.
static int
s_append (kiln_table_t *self, char *text)
{
    if (!text)
        return -1;
    if (self->count == self->capacity) {
        size_t capacity = self->capacity ? self->capacity * 2 : 64;
        char **cells = realloc (self->cells, capacity * sizeof *cells);
        if (!cells) {
            free (text);
            return -1;
        }
        self->cells = cells;
        self->capacity = capacity;
    }
    self->cells [self->count++] = text;
    return 0;
}

int
kiln_table_add (kiln_table_t *self, const char *text)
{
    return s_append (self, strdup (text && *text ? text : "-"));
}

int
kiln_table_addf (kiln_table_t *self, const char *format, ...)
{
    char *text = NULL;
    va_list args;
    va_start (args, format);
    int rc = vasprintf (&text, format, args);
    va_end (args);
    if (rc < 0)
        return -1;
    if (!*text) {
        free (text);
        return kiln_table_add (self, NULL);
    }
    return s_append (self, text);
}

//  Display width: UTF-8 continuation bytes take no column.
static size_t
s_width (const char *text)
{
    size_t width = 0;
    for (const unsigned char *p = (const unsigned char *) text; *p; p++)
        if ((*p & 0xC0) != 0x80)
            width++;
    return width;
}

void
kiln_table_print (kiln_table_t *self, FILE *out)
{
    while (self->count % self->columns)
        if (kiln_table_add (self, NULL))
            return;
    size_t *widths = calloc (self->columns, sizeof *widths);
    if (!widths)
        return;
    for (size_t i = 0; i < self->count; i++) {
        size_t width = s_width (self->cells [i]);
        if (width > widths [i % self->columns])
            widths [i % self->columns] = width;
    }
    for (size_t i = 0; i < self->count; i++) {
        size_t column = i % self->columns;
        fputs (self->cells [i], out);
        if (column + 1 == self->columns)
            fputc ('\n', out);
        else
            fprintf (out, "%*s", (int) (widths [column] - s_width (self->cells [i]) + 2), "");
    }
    free (widths);
}
