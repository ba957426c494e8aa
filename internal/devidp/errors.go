package devidp

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// aadError is an error answer in Entra ID's shape.
type aadError struct {
	status int    // HTTP status
	err    string // OAuth error
	code   int    // AADSTS code
	desc   string // text after "AADSTSnnnn: "
}

// ErrorResponse is the JSON body of an error answer, as Entra ID sends it.
type ErrorResponse struct {
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description"`
	ErrorCodes       []int  `json:"error_codes"`
	Timestamp        string `json:"timestamp"`
	TraceID          string `json:"trace_id"`
	CorrelationID    string `json:"correlation_id"`
	ErrorURI         string `json:"error_uri,omitempty"`
}

// Entra's timestamp format in error bodies.
const timestampLayout = "2006-01-02 15:04:05Z"

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, e aadError) {
	now := time.Now().UTC().Format(timestampLayout)
	trace := randomGUID()
	corr := r.Header.Get("client-request-id")
	if !isGUID(corr) {
		corr = randomGUID()
	}
	body := ErrorResponse{
		Error: e.err,
		ErrorDescription: fmt.Sprintf("AADSTS%d: %s\r\nTrace ID: %s\r\nCorrelation ID: %s\r\nTimestamp: %s",
			e.code, e.desc, trace, corr, now),
		ErrorCodes:    []int{e.code},
		Timestamp:     now,
		TraceID:       trace,
		CorrelationID: corr,
		ErrorURI:      "https://" + s.host + "/error?code=" + strconv.Itoa(e.code),
	}
	writeJSON(w, e.status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Cache-Control", "no-store, no-cache")
	h.Set("Pragma", "no-cache")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func errTenantNotFound(tenant string) aadError {
	return aadError{http.StatusBadRequest, "invalid_request", 90002, fmt.Sprintf(
		"Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. "+
			"Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant.", tenant)}
}

func errClientNotFound(clientID, tenant string) aadError {
	return aadError{http.StatusBadRequest, "unauthorized_client", 700016, fmt.Sprintf(
		"Application with identifier '%s' was not found in the directory '%s'. This can happen if the application has not been "+
			"installed by the administrator of the tenant or consented to by any user in the tenant. "+
			"You may have sent your authentication request to the wrong tenant.", clientID, tenant)}
}

func errInvalidSecret(clientID string) aadError {
	return aadError{http.StatusUnauthorized, "invalid_client", 7000215, fmt.Sprintf(
		"Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, "+
			"not the client secret ID, for a secret added to app '%s'.", clientID)}
}

func errSecretExpired(clientID string) aadError {
	return aadError{http.StatusUnauthorized, "invalid_client", 7000222, fmt.Sprintf(
		"The provided client secret keys for app '%s' are expired. Visit the Azure portal to create new keys for your app: "+
			"https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.", clientID)}
}

func errNoCredential() aadError {
	return aadError{http.StatusUnauthorized, "invalid_client", 7000218,
		"The request body must contain the following parameter: 'client_assertion' or 'client_secret'."}
}

func errInvalidScope(scope string) aadError {
	return aadError{http.StatusBadRequest, "invalid_scope", 70011, fmt.Sprintf(
		"The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. "+
			"The scope '%s' is not valid.", scope)}
}

func errAssertionKeyNotFound(clientID, thumbprint string) aadError {
	return aadError{http.StatusUnauthorized, "invalid_client", 700027, fmt.Sprintf(
		"The certificate with identifier used to sign the client assertion is not registered on application. "+
			"[Reason - The key was not found., Thumbprint of key used by client: '%s', Please visit the Azure Portal, "+
			"Graph Explorer or directly use MS Graph to see configured keys for app Id '%s'.]", thumbprint, clientID)}
}

func errAssertionInvalid(clientID, reason string) aadError {
	return aadError{http.StatusUnauthorized, "invalid_client", 700027, fmt.Sprintf(
		"Client assertion failed signature validation. [Reason - %s, Client id of the application is '%s'.]", reason, clientID)}
}

func errAssertionTime() aadError {
	return aadError{http.StatusUnauthorized, "invalid_client", 700024,
		"Client assertion is not within its valid time range."}
}

func errAssertionMalformed() aadError {
	return aadError{http.StatusBadRequest, "invalid_request", 50027,
		"JWT token is invalid or malformed."}
}

func errAssertionType() aadError {
	return aadError{http.StatusBadRequest, "invalid_request", 70002,
		"The client_assertion_type 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer' is the only one supported."}
}

func errMissingParam(name string) aadError {
	return aadError{http.StatusBadRequest, "invalid_request", 900144, fmt.Sprintf(
		"The request body must contain the following parameter: '%s'.", name)}
}

func errUnsupportedGrant(grant string) aadError {
	return aadError{http.StatusBadRequest, "unsupported_grant_type", 70003, fmt.Sprintf(
		"The app requested an unsupported grant type '%s'.", grant)}
}
