"""The mail addresses of the test authorities, the gateway and its admins."""

POLICE_ADDRESS = "disclosures@westmercia.police.example"
LA_ADDRESS = "dcs.secure@shropshire.gov.example"
OCC_ADDRESS = "register@occ.example"
GATEWAY_ADDRESS = "register-requests@hmci.example"
ADMIN_ADDRESS = "gateway-admin@hmci.example"
