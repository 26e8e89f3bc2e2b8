/* empty.c: placeholder translation unit for a library whose sources are not written yet. */
typedef int rmapvm_empty_translation_unit;
