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

func errMultipleResources(scope string) aadError {
	return aadError{http.StatusBadRequest, "invalid_scope", 28000, fmt.Sprintf(
		"Provided value for the input parameter scope is not valid because it contains more than one resource. Scope %s is not valid.", scope)}
}

func errAuthorizationPending() aadError {
	return aadError{http.StatusBadRequest, "authorization_pending", 70016,
		"The provided request has not yet been authorized by the user. The user must input their code."}
}

func errAuthorizationDeclined() aadError {
	return aadError{http.StatusBadRequest, "authorization_declined", 70000,
		"The user declined the authorization request on the device login page."}
}

func errDeviceCodeExpired() aadError {
	return aadError{http.StatusBadRequest, "expired_token", 70019,
		"Verification code expired. The user did not complete the sign-in in time: start the device code flow again."}
}

func errBadVerificationCode() aadError {
	return aadError{http.StatusBadRequest, "bad_verification_code", 70018,
		"Invalid verification code: the device_code was not issued to this application or is unknown."}
}

func errDeviceCodeRedeemed() aadError {
	return aadError{http.StatusBadRequest, "invalid_grant", 70000,
		"The provided value for the input parameter 'device_code' is not valid: it has already been redeemed."}
}

func errUserNotFound(upn string) aadError {
	return aadError{http.StatusBadRequest, "invalid_grant", 50034, fmt.Sprintf(
		"The user account %s does not exist in the directory. To sign into this application, the account must be added to the directory.", upn)}
}

func errMalformedGrant() aadError {
	return aadError{http.StatusBadRequest, "invalid_grant", 9002313,
		"Invalid request. Request is malformed or invalid: the refresh token is not valid."}
}

func errRefreshTokenOtherClient(clientID string) aadError {
	return aadError{http.StatusBadRequest, "invalid_grant", 70000, fmt.Sprintf(
		"Provided grant is invalid or malformed: the refresh token was issued to another application than '%s'.", clientID)}
}

func errRefreshTokenRevoked() aadError {
	return aadError{http.StatusBadRequest, "invalid_grant", 50173,
		"The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password."}
}

func errRefreshTokenInactive(issued time.Time) aadError {
	return aadError{http.StatusBadRequest, "invalid_grant", 700082, fmt.Sprintf(
		"The refresh token has expired due to inactivity. The token was issued on %s and was inactive for 90.00:00:00.",
		issued.UTC().Format("2006-01-02T15:04:05.0000000Z"))}
}

func errRefreshTokenReplaced() aadError {
	return aadError{http.StatusBadRequest, "invalid_grant", 70000,
		"Provided grant is invalid or malformed: the refresh token has already been redeemed and was replaced by a new one (strict rotation)."}
}

func errConsentRequired(clientID, scope string) aadError {
	return aadError{http.StatusBadRequest, "invalid_grant", 65001, fmt.Sprintf(
		"The user or administrator has not consented to use the application with ID '%s' for scope '%s'. "+
			"Send an interactive authorization request for this user and resource.", clientID, scope)}
}
