// libcurl for IpactrRegistry's HTTP transport.
//
// curl_easy_setopt, curl_easy_getinfo and curl_multi_setopt are variadic,
// which Swift cannot call: these typed wrappers take one argument type each.
// CURL_GLOBAL_DEFAULT and CURL_ERROR_SIZE are macros Swift does not import.
#ifndef IPACTR_CCURL_SHIM_H
#define IPACTR_CCURL_SHIM_H
#include <curl/curl.h>
#include <stddef.h>

static inline CURLcode ipactr_curl_global_init(void) { return curl_global_init(CURL_GLOBAL_DEFAULT); }
static inline size_t ipactr_curl_error_size(void) { return CURL_ERROR_SIZE; }

static inline CURLcode ipactr_curl_setopt_long(CURL *h, CURLoption o, long v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode ipactr_curl_setopt_string(CURL *h, CURLoption o, const char *v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode ipactr_curl_setopt_pointer(CURL *h, CURLoption o, void *v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode ipactr_curl_setopt_slist(CURL *h, CURLoption o, struct curl_slist *v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode ipactr_curl_setopt_errorbuffer(CURL *h, char *buffer) { return curl_easy_setopt(h, CURLOPT_ERRORBUFFER, buffer); }
static inline CURLcode ipactr_curl_setopt_writefunction(CURL *h, curl_write_callback f) { return curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, f); }
static inline CURLcode ipactr_curl_setopt_headerfunction(CURL *h, curl_write_callback f) { return curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, f); }
/// CURLOPT_CAINFO_BLOB: curl copies the bytes (CURL_BLOB_COPY).
static inline CURLcode ipactr_curl_setopt_cainfo_blob(CURL *h, void *data, size_t len) {
    struct curl_blob blob = { data, len, CURL_BLOB_COPY };
    return curl_easy_setopt(h, CURLOPT_CAINFO_BLOB, &blob);
}

static inline CURLcode ipactr_curl_getinfo_long(CURL *h, CURLINFO i, long *v) { return curl_easy_getinfo(h, i, v); }

static inline CURLMcode ipactr_curl_multi_setopt_long(CURLM *m, CURLMoption o, long v) { return curl_multi_setopt(m, o, v); }

/// The CA bundle libcurl was built to use (Debian: /etc/ssl/certs/ca-certificates.crt), or NULL.
static inline const char *ipactr_curl_default_cainfo(void) {
    curl_version_info_data *d = curl_version_info(CURLVERSION_NOW);
    return d && d->age >= CURLVERSION_SEVENTH ? d->cainfo : NULL;
}
#endif
