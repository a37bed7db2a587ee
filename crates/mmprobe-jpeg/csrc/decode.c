/*
 * mmprobe-jpeg: one JPEG in memory -> samples, through libjpeg's API with the
 * decoder settings Pillow uses (src/libImaging/JpegDecode.c):
 *
 *  - libjpeg's defaults: the accurate integer IDCT (JDCT_ISLOW) and "fancy"
 *    (triangle-filter) chroma upsampling; Pillow changes them only in draft mode.
 *  - out_color_space from the number of components, as Pillow's rawmode:
 *    1 -> JCS_GRAYSCALE ("L"), 3 -> JCS_RGB ("RGB"), 4 -> JCS_CMYK ("CMYK;I",
 *    libjpeg converting YCCK to CMYK); jpeg_color_space is libjpeg's own guess.
 *  - warnings silenced (corrupt entropy data still decodes); a fatal error
 *    refuses the file.
 *  - a suspending data source: when libjpeg asks for bytes past the end of
 *    the buffer it suspends, and that is where Pillow, which feeds libjpeg
 *    the same way, reports "image file is truncated". As in Pillow, running
 *    out of data only in jpeg_finish_decompress, after every row, is not an
 *    error.
 */
#include <setjmp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>

#define MMJ_OK 0
#define MMJ_TRUNCATED 1
#define MMJ_CORRUPT 2
#define MMJ_BAD_OUTPUT 3

typedef struct {
    unsigned int width;
    unsigned int height;
    int components;
    int precision;
    int colour_space; /* J_COLOR_SPACE that libjpeg infers for the file */
    int progressive;
} mmj_header;

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char *msg;
    size_t msg_len;
} mmj_error;

static void mmj_error_exit(j_common_ptr cinfo) {
    mmj_error *err = (mmj_error *)cinfo->err;
    char text[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, text);
    if (err->msg_len > 0) {
        snprintf(err->msg, err->msg_len, "%s", text);
    }
    longjmp(err->jump, 1);
}

static void mmj_silent(j_common_ptr cinfo) { (void)cinfo; }

static void mmj_src_noop(j_decompress_ptr cinfo) { (void)cinfo; }

/* The whole file is already in the buffer: asking for more suspends. */
static boolean mmj_src_fill(j_decompress_ptr cinfo) {
    (void)cinfo;
    return FALSE;
}

static void mmj_src_skip(j_decompress_ptr cinfo, long count) {
    struct jpeg_source_mgr *src = cinfo->src;
    if (count <= 0) {
        return;
    }
    if ((size_t)count > src->bytes_in_buffer) {
        /* Skipping past the end: nothing is left, so the next read suspends. */
        src->next_input_byte += src->bytes_in_buffer;
        src->bytes_in_buffer = 0;
    } else {
        src->next_input_byte += count;
        src->bytes_in_buffer -= (size_t)count;
    }
}

static void mmj_fill_header(const struct jpeg_decompress_struct *cinfo, mmj_header *header) {
    header->width = cinfo->image_width;
    header->height = cinfo->image_height;
    header->components = cinfo->num_components;
    header->precision = cinfo->data_precision;
    header->colour_space = (int)cinfo->jpeg_color_space;
    header->progressive = cinfo->progressive_mode ? 1 : 0;
}

/*
 * Reads the header of `data` into `header` and, when `out` is not NULL,
 * decodes every row into `out` (width * height * components bytes, rows
 * packed). The caller checks precision and components first (8 bits; 1, 3 or
 * 4 components, as Pillow accepts). On MMJ_CORRUPT, `msg` holds libjpeg's
 * message.
 */
int mmj_decode(const unsigned char *data, size_t len, unsigned char *out, size_t out_len, mmj_header *header,
               char *msg, size_t msg_len) {
    struct jpeg_decompress_struct cinfo;
    struct jpeg_source_mgr src;
    mmj_error err;
    JSAMPROW rows[16];
    volatile int status = MMJ_OK;
    int r;

    memset(&cinfo, 0, sizeof(cinfo));
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = mmj_error_exit;
    err.pub.output_message = mmj_silent;
    err.msg = msg;
    err.msg_len = msg_len;
    if (msg_len > 0) {
        msg[0] = '\0';
    }
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        return MMJ_CORRUPT;
    }
    jpeg_create_decompress(&cinfo);

    src.next_input_byte = data;
    src.bytes_in_buffer = len;
    src.init_source = mmj_src_noop;
    src.fill_input_buffer = mmj_src_fill;
    src.skip_input_data = mmj_src_skip;
    src.resync_to_restart = jpeg_resync_to_restart;
    src.term_source = mmj_src_noop;
    cinfo.src = &src;

    /* As Pillow: tables-only datastreams are skipped until an image header. */
    do {
        r = jpeg_read_header(&cinfo, FALSE);
    } while (r == JPEG_HEADER_TABLES_ONLY);
    if (r == JPEG_SUSPENDED) {
        jpeg_destroy_decompress(&cinfo);
        return MMJ_TRUNCATED;
    }
    mmj_fill_header(&cinfo, header);
    if (out == NULL) {
        jpeg_destroy_decompress(&cinfo);
        return MMJ_OK;
    }

    switch (cinfo.num_components) {
    case 1:
        cinfo.out_color_space = JCS_GRAYSCALE;
        break;
    case 3:
        cinfo.out_color_space = JCS_RGB;
        break;
    case 4:
        cinfo.out_color_space = JCS_CMYK;
        break;
    default:
        jpeg_destroy_decompress(&cinfo);
        return MMJ_BAD_OUTPUT;
    }
    /* libjpeg's defaults, which Pillow keeps outside draft mode; said here so
       that a libjpeg built with another JDCT_DEFAULT cannot change them. */
    cinfo.dct_method = JDCT_ISLOW;
    cinfo.do_fancy_upsampling = TRUE;
    cinfo.scale_num = 1;
    cinfo.scale_denom = 1;

    if (!jpeg_start_decompress(&cinfo)) {
        jpeg_destroy_decompress(&cinfo);
        return MMJ_TRUNCATED;
    }
    {
        size_t stride = (size_t)cinfo.output_width * (size_t)cinfo.output_components;
        if (cinfo.output_width != header->width || cinfo.output_height != header->height ||
            cinfo.output_components != cinfo.num_components || stride * (size_t)cinfo.output_height > out_len) {
            jpeg_destroy_decompress(&cinfo);
            return MMJ_BAD_OUTPUT;
        }
        while (cinfo.output_scanline < cinfo.output_height) {
            JDIMENSION first = cinfo.output_scanline;
            JDIMENSION want = cinfo.output_height - first;
            JDIMENSION i;
            if (want > 16) {
                want = 16;
            }
            for (i = 0; i < want; i++) {
                rows[i] = out + (size_t)(first + i) * stride;
            }
            if (jpeg_read_scanlines(&cinfo, rows, want) == 0) {
                status = MMJ_TRUNCATED;
                break;
            }
        }
    }
    if (status == MMJ_OK) {
        /* Suspending here, with every row out, is accepted (Pillow too). */
        (void)jpeg_finish_decompress(&cinfo);
    }
    jpeg_destroy_decompress(&cinfo);
    return status;
}
